"""Grandfather-father-son retention on synthetic calendars; every expectation is an explicit, hand-derived list."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from runbooks.decisions.retention import Candidate, RetentionPlan, select_retention
from runbooks.settings import RetentionPolicy


def at(day: str, hhmm: str = "02:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00+00:00")


def bid(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def cand(day: str, hhmm: str = "02:00", *, verified: bool = True) -> Candidate:
    moment = at(day, hhmm)
    return Candidate(bid(moment), moment, verified)


def ids(*specs: str) -> list[str]:
    """'2025-01-05' -> the 02:00 backup of that day; '2025-01-05 14:00' -> that exact time."""
    out = []
    for spec in specs:
        day, _, hhmm = spec.partition(" ")
        out.append(bid(at(day, hhmm or "02:00")))
    return out


def daily_calendar(first: date, last: date, *, skip: set[date] = frozenset()) -> list[Candidate]:
    days = (first + timedelta(n) for n in range((last - first).days + 1))
    return [cand(d.isoformat()) for d in days if d not in skip]


def policy(daily: int, weekly: int, monthly: int) -> RetentionPolicy:
    return RetentionPolicy(daily=daily, weekly=weekly, monthly=monthly)


def oldest_first(candidates: list[Candidate], keep: set[str]) -> list[str]:
    return [c.backup_id for c in sorted(candidates, key=lambda c: c.taken_at) if c.backup_id not in keep]


def check_partition(plan: RetentionPlan, candidates: list[Candidate]) -> None:
    every = {c.backup_id for c in candidates}
    assert set(plan.keep) | set(plan.remove) == every
    assert not set(plan.keep) & set(plan.remove)
    assert len(plan.remove) == len(set(plan.remove))


# --- the main calendar: 400 days of 02:00 backups ending Sunday 2025-01-05, with extras, failures and a gap ---

FIRST, LAST = date(2023, 12, 3), date(2025, 1, 5)
GAP = {date(2024, 12, 25), date(2024, 12, 26), date(2024, 12, 27)}
FAILED_ONLY_DAY = date(2025, 1, 4)


@pytest.fixture
def calendar() -> list[Candidate]:
    base = daily_calendar(FIRST, LAST, skip=GAP | {FAILED_ONLY_DAY})
    extras = [
        cand("2025-01-05", "14:00"),  # newest verified
        cand("2025-01-05", "20:00", verified=False),  # newer than anything verified, but failed
        cand("2025-01-04", "02:00", verified=False),  # the only backup of that day failed
        cand("2025-01-03", "23:30"),  # second backup that day: the later one is the daily
        cand("2024-12-31", "12:00", verified=False),  # failed, later than the verified 02:00 of that day
        cand("2024-11-30", "22:00", verified=False),  # failed on the last day of a month
        cand("2024-06-15", "03:00"),  # an extra verified one deep in the past: never kept
    ]
    return base + extras


def test_calendar_is_what_the_tests_assume(calendar: list[Candidate]) -> None:
    assert (LAST - FIRST).days + 1 == 400
    assert len(calendar) == 400 - 3 - 1 + 7
    assert len({c.backup_id for c in calendar}) == len(calendar)
    assert LAST.isocalendar()[:] == (2025, 1, 7)  # a Sunday in ISO week 2025-W01 (starts Monday 2024-12-30)


def test_daily7_weekly4_monthly6(calendar: list[Candidate]) -> None:
    plan = select_retention(calendar, policy(7, 4, 6))

    expected = {
        "2025-01-05 14:00": ["newest", "daily 2025-01-05", "weekly 2025-W01", "monthly 2025-01"],
        # 2025-01-04 holds only a failed backup: it does not use one of the 7 daily slots
        "2025-01-03 23:30": ["daily 2025-01-03"],
        "2025-01-02": ["daily 2025-01-02"],
        "2025-01-01": ["daily 2025-01-01"],
        "2024-12-31": ["daily 2024-12-31", "monthly 2024-12"],
        "2024-12-30": ["daily 2024-12-30"],
        "2024-12-29": ["daily 2024-12-29", "weekly 2024-W52"],
        "2024-12-22": ["weekly 2024-W51"],
        "2024-12-15": ["weekly 2024-W50"],
        "2024-11-30": ["monthly 2024-11"],  # the 02:00 one: the 22:00 one that day failed
        "2024-10-31": ["monthly 2024-10"],
        "2024-09-30": ["monthly 2024-09"],
        "2024-08-31": ["monthly 2024-08"],
    }
    assert plan.keep == {ids(spec)[0]: reasons for spec, reasons in expected.items()}
    assert plan.remove == oldest_first(calendar, set(plan.keep))
    check_partition(plan, calendar)


def test_remove_is_oldest_first_and_holds_the_failed_and_superseded(calendar: list[Candidate]) -> None:
    plan = select_retention(calendar, policy(7, 4, 6))

    assert plan.remove[0] == ids("2023-12-03")[0]
    assert plan.remove[-1] == ids("2025-01-05 20:00")[0]  # failed, and the newest of all
    stamps = [datetime.strptime(i, "%Y%m%dT%H%M%SZ") for i in plan.remove]
    assert stamps == sorted(stamps)
    for gone in ids("2025-01-05", "2025-01-04", "2025-01-03", "2024-12-31 12:00", "2024-11-30 22:00",
                    "2024-12-28", "2024-06-15 03:00", "2024-06-15"):
        assert gone in plan.remove


def test_all_zero_policy_keeps_only_the_newest_verified(calendar: list[Candidate]) -> None:
    plan = select_retention(calendar, policy(0, 0, 0))

    assert plan.keep == {ids("2025-01-05 14:00")[0]: ["newest"]}
    assert len(plan.remove) == len(calendar) - 1
    assert plan.remove == oldest_first(calendar, set(plan.keep))
    check_partition(plan, calendar)


def test_weekly_only_counts_iso_weeks_that_have_a_verified_backup(calendar: list[Candidate]) -> None:
    plan = select_retention(calendar, policy(0, 6, 0))

    assert plan.keep == {
        ids("2025-01-05 14:00")[0]: ["newest", "weekly 2025-W01"],
        ids("2024-12-29")[0]: ["weekly 2024-W52"],
        ids("2024-12-22")[0]: ["weekly 2024-W51"],
        ids("2024-12-15")[0]: ["weekly 2024-W50"],
        ids("2024-12-08")[0]: ["weekly 2024-W49"],
        ids("2024-12-01")[0]: ["weekly 2024-W48"],
    }


def test_monthly_reaches_back_across_the_year_and_stops_at_the_first_backup(calendar: list[Candidate]) -> None:
    plan = select_retention(calendar, policy(0, 0, 24))

    month_ends = ["2024-12-31", "2024-11-30", "2024-10-31", "2024-09-30", "2024-08-31", "2024-07-31",
                  "2024-06-30", "2024-05-31", "2024-04-30", "2024-03-31", "2024-02-29", "2024-01-31",
                  "2023-12-31"]
    expected = {ids("2025-01-05 14:00")[0]: ["newest", "monthly 2025-01"]}
    expected |= {ids(d)[0]: [f"monthly {d[:7]}"] for d in month_ends}
    assert plan.keep == expected  # 14 months exist, fewer than 24: all of them, none invented
    check_partition(plan, calendar)


def test_daily_slots_skip_days_without_backups(calendar: list[Candidate]) -> None:
    plan = select_retention(calendar, policy(10, 0, 0))

    days = ["2025-01-03 23:30", "2025-01-02", "2025-01-01", "2024-12-31", "2024-12-30", "2024-12-29",
            "2024-12-28", "2024-12-24", "2024-12-23"]  # no backup 12-25..12-27, only a failed one 01-04
    expected = {ids("2025-01-05 14:00")[0]: ["newest", "daily 2025-01-05"]}
    expected |= {ids(d)[0]: [f"daily {d[:10]}"] for d in days}
    assert plan.keep == expected


def test_input_order_does_not_matter(calendar: list[Candidate]) -> None:
    shuffled = list(calendar)
    random.Random(7).shuffle(shuffled)
    assert shuffled != calendar
    a, b = select_retention(calendar, policy(7, 4, 6)), select_retention(shuffled, policy(7, 4, 6))
    assert a.keep == b.keep
    assert a.remove == b.remove


# --- ISO-year boundaries ---


def test_iso_week_one_starts_in_the_previous_calendar_year() -> None:
    # Mon 2024-12-30 .. Wed 2025-01-01 are all ISO week 2025-W01.
    backups = daily_calendar(date(2024, 12, 1), date(2025, 1, 1))
    plan = select_retention(backups, policy(0, 3, 2))

    assert plan.keep == {
        ids("2025-01-01")[0]: ["newest", "weekly 2025-W01", "monthly 2025-01"],
        ids("2024-12-29")[0]: ["weekly 2024-W52"],
        ids("2024-12-22")[0]: ["weekly 2024-W51"],
        ids("2024-12-31")[0]: ["monthly 2024-12"],  # kept for its month, not its week (2025-W01 is taken)
    }
    assert ids("2024-12-30")[0] in plan.remove
    check_partition(plan, backups)


def test_iso_week_53_spans_new_year() -> None:
    # 2020 has an ISO week 53: Mon 2020-12-28 .. Sun 2021-01-03.
    backups = daily_calendar(date(2020, 12, 1), date(2021, 1, 12))
    plan = select_retention(backups, policy(0, 4, 0))

    assert plan.keep == {
        ids("2021-01-12")[0]: ["newest", "weekly 2021-W02"],
        ids("2021-01-10")[0]: ["weekly 2021-W01"],
        ids("2021-01-03")[0]: ["weekly 2020-W53"],
        ids("2020-12-27")[0]: ["weekly 2020-W52"],
    }
    for gone in ids("2020-12-31", "2021-01-01", "2021-01-02"):
        assert gone in plan.remove


def test_week_53_newest_backup_in_the_old_year() -> None:
    # The newest backup of 2020-W53 falls in 2020 because the days after it have none.
    backups = daily_calendar(date(2020, 12, 20), date(2020, 12, 29))
    backups += daily_calendar(date(2021, 1, 4), date(2021, 1, 5))
    plan = select_retention(backups, policy(0, 3, 2))

    assert plan.keep == {
        ids("2021-01-05")[0]: ["newest", "weekly 2021-W01", "monthly 2021-01"],
        ids("2020-12-29")[0]: ["weekly 2020-W53", "monthly 2020-12"],
        ids("2020-12-27")[0]: ["weekly 2020-W52"],
    }


# --- gaps, failures and edge cases ---


def test_sparse_calendar_days_and_weeks() -> None:
    backups = [cand(d) for d in ("2024-05-01", "2024-05-02", "2024-05-05", "2024-05-09", "2024-05-10")]
    plan = select_retention(backups, policy(3, 2, 0))

    assert plan.keep == {
        ids("2024-05-10")[0]: ["newest", "daily 2024-05-10", "weekly 2024-W19"],  # Mon 05-06 .. Sun 05-12
        ids("2024-05-09")[0]: ["daily 2024-05-09"],
        ids("2024-05-05")[0]: ["daily 2024-05-05", "weekly 2024-W18"],
    }
    assert plan.remove == ids("2024-05-01", "2024-05-02")


def test_failed_backups_never_fill_a_bucket() -> None:
    backups = [
        cand("2024-03-01", "02:00"),
        cand("2024-03-02", "02:00"),
        cand("2024-03-03", "02:00", verified=False),
        cand("2024-03-04", "02:00", verified=False),
        cand("2024-04-01", "02:00", verified=False),  # a month with only a failed backup
    ]
    plan = select_retention(backups, policy(2, 0, 2))

    assert plan.keep == {
        ids("2024-03-02")[0]: ["newest", "daily 2024-03-02", "monthly 2024-03"],
        ids("2024-03-01")[0]: ["daily 2024-03-01"],
    }
    assert plan.remove == ids("2024-03-03", "2024-03-04", "2024-04-01")


def test_nothing_verified_keeps_everything() -> None:
    backups = [cand("2024-03-01", verified=False), cand("2024-03-02", verified=False),
               cand("2024-03-02", "09:00", verified=False)]
    plan = select_retention(backups, policy(0, 0, 0))

    assert plan.keep == {i: ["no verified backup exists"] for i in ids("2024-03-01", "2024-03-02", "2024-03-02 09:00")}
    assert plan.remove == []


def test_no_candidates() -> None:
    plan = select_retention([], policy(7, 4, 6))
    assert plan.keep == {}
    assert plan.remove == []


def test_single_verified_backup() -> None:
    plan = select_retention([cand("2024-03-01")], policy(7, 4, 6))
    assert plan.keep == {ids("2024-03-01")[0]: ["newest", "daily 2024-03-01", "weekly 2024-W09", "monthly 2024-03"]}
    assert plan.remove == []


def test_same_day_keeps_the_latest_verified_of_that_day() -> None:
    backups = [cand("2024-03-01", "01:00"), cand("2024-03-01", "13:00"), cand("2024-03-01", "23:59"),
               cand("2024-03-02", "00:01")]
    plan = select_retention(backups, policy(2, 0, 0))

    assert plan.keep == {
        ids("2024-03-02 00:01")[0]: ["newest", "daily 2024-03-02"],
        ids("2024-03-01 23:59")[0]: ["daily 2024-03-01"],
    }
    assert plan.remove == ids("2024-03-01 01:00", "2024-03-01 13:00")


def test_days_are_utc_days_whatever_the_offset() -> None:
    # 01:00 at +02:00 on 03-10 is 23:00 UTC on 03-09: the same UTC day as the 10:00Z backup.
    late = datetime(2024, 3, 10, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    backups = [Candidate("B", late, True), Candidate("A", at("2024-03-09", "10:00"), True),
               Candidate("C", at("2024-03-08", "10:00"), True)]
    plan = select_retention(backups, policy(2, 0, 0))

    assert plan.keep == {"B": ["newest", "daily 2024-03-09"], "C": ["daily 2024-03-08"]}
    assert plan.remove == ["A"]


def test_identical_timestamps_are_resolved_deterministically() -> None:
    moment = at("2024-03-01")
    backups = [Candidate("x-1", moment, True), Candidate("x-2", moment, True)]
    plan = select_retention(backups, policy(1, 1, 1))
    again = select_retention(list(reversed(backups)), policy(1, 1, 1))

    assert len(plan.keep) == 1
    assert plan.keep == again.keep
    assert plan.remove == again.remove
    check_partition(plan, backups)


def test_a_held_backup_is_kept_whatever_the_policy() -> None:
    backups = [cand("2026-01-01"), cand("2026-01-02"), cand("2026-01-03")]
    plan = select_retention(backups, RetentionPolicy(daily=0, weekly=0, monthly=0),
                            held={backups[0].backup_id: "held by run r1 (restore)"})
    assert plan.remove == [backups[1].backup_id]
    assert plan.keep[backups[0].backup_id] == ["held by run r1 (restore)"]


def test_holds_lapse_and_are_cleared_by_the_next_hold(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from runbooks.adapters.catalog import BackupCatalog, BackupHold
    from runbooks.adapters.repository.local import LocalRepository
    from runbooks.decisions.manifest import BackupManifest

    catalog = BackupCatalog(LocalRepository(tmp_path))
    now = datetime.now(UTC)
    manifest = BackupManifest(backup_id="20260101T020000Z", kind="database", name="db", host="h", started_at=now,
                              finished_at=now, objects=[])
    catalog.repository.put_bytes("databases/db/20260101T020000Z/manifest.json", manifest.model_dump_json().encode())
    lapsed = BackupHold(backup_id=manifest.backup_id, holder="killed", reason="r", until=now - timedelta(hours=1))
    catalog.repository.put_bytes("holds/databases/db/20260101T020000Z/killed.json", lapsed.model_dump_json().encode())
    assert catalog.holds("database", "db") == {}  # a lapsed hold holds nothing
    with catalog.holding(manifest, holder="live-run", reason="restore", until=now + timedelta(hours=1)):
        assert [h.holder for h in catalog.holds("database", "db")[manifest.backup_id]] == ["live-run"]
        assert not catalog.repository.exists("holds/databases/db/20260101T020000Z/killed.json")
    assert catalog.holds("database", "db") == {}  # released at the end of the block
