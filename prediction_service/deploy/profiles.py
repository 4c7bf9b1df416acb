"""Which Serve config applies when: market hours or off hours, by the exchange's clock.

The switch is the simplest real one: ``python -m prediction_service ray profile --apply`` from cron (or
a Kubernetes CronJob) every few minutes runs ``serve deploy`` with the profile's config file. The two
files differ only in ``autoscaling_config``, which Serve updates in place (no replica restarts), and
applying the file already in force is a no-op, so running it often is safe. Exchange holidays are not
known here: on a holiday the market-hours profile simply keeps more replicas than needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import Enum
from pathlib import Path
from zoneinfo import ZoneInfo

CONFIG_DIR = Path(__file__).resolve().parents[2] / "deploy" / "ray"


class Profile(str, Enum):
    MARKET_HOURS = "market-hours"
    OFF_HOURS = "off-hours"

    def config_path(self, config_dir: Path = CONFIG_DIR) -> Path:
        return config_dir / f"{self.value}.yaml"


@dataclass(frozen=True)
class TradingSchedule:
    """Weekday session in the exchange's time zone (NYSE by default), widened by ``lead`` before the open
    and ``lag`` after the close so the larger fleet is up before the opening burst and drains after."""

    zone: str = "America/New_York"
    open: time = time(9, 30)
    close: time = time(16, 0)
    lead: timedelta = timedelta(minutes=30)
    lag: timedelta = timedelta(minutes=30)

    def profile_at(self, moment: datetime) -> Profile:
        if moment.tzinfo is None:
            raise ValueError("give an aware datetime (with a UTC offset): the schedule is in exchange time")
        local = moment.astimezone(ZoneInfo(self.zone))
        if local.weekday() >= 5:
            return Profile.OFF_HOURS
        start = datetime.combine(local.date(), self.open, local.tzinfo) - self.lead
        end = datetime.combine(local.date(), self.close, local.tzinfo) + self.lag
        return Profile.MARKET_HOURS if start <= local < end else Profile.OFF_HOURS
