import json
import subprocess
import sys

from muvo_doctor.core.finding import Finding, Report, verdict_of


def test_report_round_trips_through_json():
    f = Finding(
        check="flat_loss",
        severity="critical",
        step=3,
        message="loss flat at 0.507",
        evidence={"value": 0.507},
        advice="check the loss",
    )
    r = Report(source="x", verdict=verdict_of([f]), steps=10, findings=[f])
    data = json.loads(r.to_json())
    assert data["schema"] == "muvo-doctor/report/v1"
    assert data["verdict"] == "dead"
    assert Report.model_validate(data) == r


def test_cli_without_command_exits_2():
    p = subprocess.run([sys.executable, "-m", "muvo_doctor"], capture_output=True, text=True)
    assert p.returncode == 2
