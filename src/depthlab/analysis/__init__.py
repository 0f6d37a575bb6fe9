"""Analysis of finished sweeps: the paired, honest comparison of the deep and the shallow wiring (`compare`)."""
