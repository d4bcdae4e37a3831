"""Reports: JSON, trigger images and charts."""
from neuralcleanse.files import write_atomic, write_json
from neuralcleanse.report.images import save_image, save_norms_chart, save_trigger_images
from neuralcleanse.report.scan_report import REPORT_NAME, write_scan_report

__all__ = ["REPORT_NAME", "save_image", "save_norms_chart", "save_trigger_images", "write_atomic", "write_json",
           "write_scan_report"]
