"""depthlab: deep and narrow, or shallow and wide? Measured.

Pipeline (one direction): spec -> grid -> packs -> engine -> store -> analysis -> report.
"""

__version__ = "0.1.0"

# The Python API (depthlab.api), loaded on first use so that `import depthlab` brings neither torch nor pandas.
__all__ = ["runs", "history", "compare", "run_sweep", "run_study"]


def __getattr__(name: str):
    if name in __all__:
        from depthlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'depthlab' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
