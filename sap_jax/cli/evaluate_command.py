"""`sap-jax evaluate`: a checkpoint's metrics on its splits, printed and optionally
written as a report.
"""

from __future__ import annotations

from pathlib import Path

from sap_jax import jsonio, safe_write
from sap_jax.cli.devices import devices_record, first_process, load_run_on_devices
from sap_jax.cli.progress import Progress
from sap_jax.metrics import split_metrics

__all__ = ["cmd_evaluate"]


def cmd_evaluate(args) -> int:
  report_path = None
  if args.report:
    (report_path,) = safe_write.check_targets(
      [(args.report, jsonio.REPORT, "report")],
      overwrite=args.overwrite,
      protect=[args.checkpoint],
    )
  progress = Progress(args.quiet)
  run, splits = load_run_on_devices(args, progress.say)
  metrics = split_metrics(run.apply_fn, run.variables, splits, mesh=args.device_mesh)
  report = {"checkpoint": str(args.checkpoint), "kind": run.meta.get("kind"), **metrics}
  if args.device_mesh is not None:
    report["devices"] = devices_record(splits)
  if run.data_changed:
    report["data_changed"] = run.data_changed
  if report_path is not None and first_process():  # one report, from process 0
    protect = [Path(args.checkpoint).absolute()]
    jsonio.write_report(report_path, report, overwrite=args.overwrite, protect=protect)
    args.written.append(report_path)
  print(jsonio.dumps(report, indent=2))
  return 0
