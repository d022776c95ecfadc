"""The paper's tables and figures from MLflow runs: ``build_report`` and ``resnet report``."""

from resnet_mlops.params.report import ReportParams
from resnet_mlops.report.build import Report, build_report, log_report
from resnet_mlops.report.runs import ReportError

__all__ = ["Report", "ReportError", "ReportParams", "build_report", "log_report"]
