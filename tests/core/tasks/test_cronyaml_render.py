"""cron.yaml is written by PyYAML: the same text as before for ordinary plans, and any value survives."""
from __future__ import annotations

import yaml

from core.tasks.periodic.cronyaml import CronPlan, render_cron_yaml


def test_ordinary_plans_give_the_familiar_file() -> None:
    text = render_cron_yaml([CronPlan("default", "every 5 minutes", None),
                             CronPlan("nightly", "every day 03:00", "Europe/Berlin")])
    assert text == (
        "# Cron groups of the periodic tasks; regenerate with `flask --app main tasks cron-yaml`.\n"
        "# Each group is pinged finely enough for its shortest interval or crontab.\n"
        "cron:\n"
        "- description: periodic tasks of cron group default\n"
        "  url: /_tasks/cron/default\n"
        "  schedule: every 5 minutes\n"
        "- description: periodic tasks of cron group nightly\n"
        "  url: /_tasks/cron/nightly\n"
        "  schedule: every day 03:00\n"
        "  timezone: Europe/Berlin\n")


def test_values_yaml_would_misread_come_back_as_written() -> None:
    plans = [CronPlan("g" * 100, "every 1 minutes # not a comment", "yes"),
             CronPlan("h", "every day 03:00: {x}", "Etc/GMT+3")]
    data = yaml.safe_load(render_cron_yaml(plans))
    assert [(e["description"], e["url"], e["schedule"], e["timezone"]) for e in data["cron"]] == [
        (f"periodic tasks of cron group {'g' * 100}", f"/_tasks/cron/{'g' * 100}", "every 1 minutes # not a comment",
         "yes"),
        ("periodic tasks of cron group h", "/_tasks/cron/h", "every day 03:00: {x}", "Etc/GMT+3")]
