"""depthlab: deep and narrow, or shallow and wide? Measured.

Pipeline (one direction): spec -> grid -> packs -> engine -> store -> analysis -> report.
"""

__version__ = "0.1.0"
