"""The sweep report: one self-contained HTML page (`html`) and the individual figures (`plots`)."""

from depthlab.report.html import build_report, write_report
from depthlab.report.plots import KINDS, NoData, figure, save

__all__ = ["build_report", "write_report", "figure", "save", "KINDS", "NoData"]
