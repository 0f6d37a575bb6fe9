"""Running a sweep: claim -> train -> record -> release once (`driver`), trained in this process's worker
threads (`runner`, `workers`) or on Ray (`ray_backend`), with progress and the CPU allocator setting."""
