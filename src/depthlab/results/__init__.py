"""The store: one SQLite file of runs (`store`), the trained weights beside it (`weights`), and the flat
export of its records (`export`: CSV, JSON, Parquet)."""
