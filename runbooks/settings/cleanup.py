"""``[cleanup]``: the disk-cleanup runbook, its watermarks, ordered rules and safety limits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from runbooks.core import protected_paths
from runbooks.settings.fields import AbsolutePath, InventoryName, Objective, refused_at

RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _file_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not pattern or "/" in pattern or "\x00" in pattern:
            raise ValueError(f"pattern {pattern!r} must be a non-empty file-name glob without '/' (e.g. '*.log')")
    return patterns


# Names of every kind: patterns that match all of them select any name ('*', '?*', '*?*'...).
_ANY_NAMES = ("a", "Z9", ".hidden", "core", "data.db", "PG_VERSION", "x y.tar.gz", "é", "-", "report.pdf", "app.log",
              "notes.txt", "id_rsa", "config.yaml", "photo.JPG", "Makefile", "libpq.so.5", "1", "__init__.py",
              "positions-2026-12-07.sql")
_NEARLY_ALL = 0.75  # patterns that select this share of those names select "everything" ('??*', '[!-]*', '*[!é]')


def _selects_everything(patterns: Sequence[str]) -> bool:
    import fnmatch

    selected = sum(any(fnmatch.fnmatchcase(name, p) for p in patterns) for name in _ANY_NAMES)
    return selected >= _NEARLY_ALL * len(_ANY_NAMES)


def _age(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class FileRule(BaseModel):
    """Files under ``roots`` whose name matches ``patterns`` and that were not modified for ``older_than``: deleted,
    or gzip-compressed in place (rotated logs). Like tmpfiles.d's age lines, with tmpreaper's safety.

    "Every file older than N" must be said: a rule without patterns, or whose patterns select any name, is refused
    unless it sets ``match_all = true`` (then ``patterns`` reads ``["*"]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["files"] = "files"
    name: str = Field(pattern=RULE_NAME_PATTERN, description="how the report and the rules parameter name it")
    action: Literal["delete", "compress"] = "delete"
    roots: list[AbsolutePath] = Field(min_length=1, description="directories walked, each inside allowed_roots; "
                                      "never followed through a symbolic link nor onto another filesystem")
    patterns: Annotated[list[str], AfterValidator(_file_patterns)] = Field(
        default_factory=list, description="file-name globs (fnmatch), e.g. ['*.log']; empty only with match_all")
    match_all: bool = Field(default=False, description="select every file name: required for a rule without "
                            "patterns (or with patterns such as '*'), so 'everything older than N' is never a "
                            "default nor a typo")
    older_than: Objective = Field(default=timedelta(days=7), description="age by modification time, e.g. '7d'")
    remove_empty_dirs: bool = Field(default=False, description="also remove directories this rule emptied that "
                                    "are themselves older than older_than (tmp and cache trees); never a root")

    @model_validator(mode="after")
    def _everything_is_explicit(self) -> FileRule:
        if self.match_all:
            if self.patterns and not _selects_everything(self.patterns):
                raise ValueError(f"rule {self.name!r} sets match_all = true and patterns {self.patterns} that "
                                 "select only some names: drop match_all, or drop the patterns to select every file")
            self.patterns = self.patterns or ["*"]
        elif not self.patterns or _selects_everything(self.patterns):
            given = f"patterns {self.patterns} select any name" if self.patterns else "names no patterns"
            verb = "delete" if self.action == "delete" else "compress"
            raise ValueError(f"rule {self.name!r} {given}: it would {verb} every file older than "
                             f"{_age(self.older_than)} under {', '.join(map(str, self.roots))}; name the files "
                             "(e.g. patterns = [\"*.log\"]), or set match_all = true if every file is meant")
        return self


class DockerRule(BaseModel):
    """Docker leftovers through the engine's API (``docker system prune``, but selective): stopped containers,
    dangling images, build cache, and unused volumes only when enabled; never an object carrying
    ``protect_label``, never one younger than ``older_than``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["docker"] = "docker"
    name: str = Field(default="docker", pattern=RULE_NAME_PATTERN)
    base_url: str | None = Field(default=None, description="engine address, e.g. unix:///var/run/docker.sock; "
                                 "None: DOCKER_HOST or the default socket")
    older_than: Objective = Field(default=timedelta(hours=24), description="created at least this long ago")
    containers: bool = Field(default=True, description="stopped containers (exited, created, dead)")
    images: bool = Field(default=True, description="dangling images (no tag, no container uses them)")
    build_cache: bool = Field(default=True, description="build cache not in use")
    volumes: bool = Field(default=False, description="volumes no container uses: data may live there, so off by "
                          "default")
    protect_label: str = Field(default="runbooks.protect", min_length=1, max_length=200,
                               description="an object carrying this label (any value) is never removed")
    only_label: str | None = Field(default=None, min_length=1, max_length=400, description="only objects carrying "
                                   "this label ('key' or 'key=value'): a shared engine's cleanup scoped to yours")


class BackupsRule(BaseModel):
    """Local backups outside ``[backup.retention]`` (a ``file://`` repository only); the newest verified backup
    of each database and every backup a run holds are always kept."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["backups"] = "backups"
    name: str = Field(default="backups", pattern=RULE_NAME_PATTERN)


class DatabaseRule(BaseModel):
    """Seed 000 "check database size": sizes, largest tables and dead tuples of the inventory's databases;
    ``VACUUM (ANALYZE)`` of bloated tables when enabled; the ``_pre_restore_`` databases restores kept, reported
    (dropped only with approval, and only those the runbooks' own record shows a restore kept)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["databases"] = "databases"
    name: str = Field(default="databases", pattern=RULE_NAME_PATTERN)
    databases: list[InventoryName] = Field(default_factory=list, description="inventory names; empty: all")
    largest: int = Field(default=10, ge=1, le=1000, description="largest tables reported per database")
    vacuum: bool = Field(default=False, description="run VACUUM (ANALYZE) on tables over the dead-tuple lines")
    dead_tuples_min: int = Field(default=10_000, ge=0, description="a table is bloated above this many dead rows")
    dead_ratio_min: float = Field(default=0.2, ge=0, description="... and this ratio of dead to live rows")
    pre_restore_older_than: Objective = Field(default=timedelta(days=7), description="databases a replace restore "
                                              "kept for longer than this are reported as reclaimable")


CleanupRule = Annotated[FileRule | DockerRule | BackupsRule | DatabaseRule, Field(discriminator="kind")]
_PROTECTED = ["*.pid", "*.lock", "*.sock", "postmaster.*", "PG_VERSION", "pg_wal", "pg_xlog", "archive_status",
              "[0-9A-F]" * 24, "[0-9A-F]" * 24 + ".partial", "[0-9A-F]" * 8 + ".history"]


ALLOWED_ROOT_FIX = "allow only directories of disposable files (e.g. /var/log, /var/tmp, /opt/<app>/tmp)"
RULE_ROOT_FIX = "point the rule at a directory of disposable files (e.g. /var/log/<app>)"


def _seed_cleanup_rules() -> list[CleanupRule]:
    """Seed 000 "Disk 90% Full", lowest risk first: compress rotated logs (nothing is lost), old temporary files,
    logs older than 7 days (``find /var/log -name "*.log" -mtime +7 -delete``), Docker leftovers
    (``docker system prune -f``), backups beyond retention, then the databases' own size."""
    return [
        FileRule(name="rotated-logs", action="compress", roots=[Path("/var/log")],
                 patterns=["*.log.[0-9]", "*.log.[0-9][0-9]", "*.log.????-??-??"], older_than=timedelta(days=1)),
        FileRule(name="tmp", roots=[Path("/tmp"), Path("/var/tmp")], match_all=True, older_than=timedelta(days=10),
                 remove_empty_dirs=True),
        FileRule(name="old-logs", roots=[Path("/var/log")], patterns=["*.log", "*.log.*"],
                 older_than=timedelta(days=7)),
        DockerRule(), BackupsRule(), DatabaseRule(),
    ]


class CleanupSettings(BaseModel):
    """The disk-cleanup runbook (seed 000 "Disk 90% Full", seed 001's disk baseline < 85 %, alert > 90 %):
    watermarks like the kubelet's image GC, ordered rules, and tmpreaper's safety limits."""

    model_config = ConfigDict(extra="forbid")

    watch: list[AbsolutePath] = Field(default_factory=lambda: [Path("/"), Path("/var"), Path("/tmp")],
                                      description="filesystems whose usage starts a cleanup (the df filter of the "
                                                  "operations runbook's health-check script)")
    high_watermark: float = Field(default=85, gt=0, le=100, description="percent used at or above which it cleans")
    low_watermark: float = Field(default=80, ge=0, lt=100, description="percent used below which it stops")
    allowed_roots: list[AbsolutePath] = Field(
        default_factory=lambda: [Path("/var/log"), Path("/var/tmp"), Path("/tmp"), Path("/opt/ats")],
        description="every file rule's roots must lie inside one of these; a system tree (FHS), a PostgreSQL data "
        "directory, the runbooks' state and repositories and the user's home are refused, as is what holds them")
    protected: list[str] = Field(default_factory=lambda: list(_PROTECTED), description="file or directory name "
                                 "globs never touched (a matching directory is not entered): pid files, "
                                 "postmaster.*, WAL segments and directories")
    max_files: int = Field(default=1_000_000, ge=1, description="files a run removes or compresses at most")
    max_bytes: ByteSize = Field(default=ByteSize(500 * 1024**3), gt=0,
                                description="bytes a run removes at most, e.g. '50GB'")
    survey: list[AbsolutePath] = Field(default_factory=lambda: [Path("/opt/ats"), Path("/var/log")],
                                       description="directories whose largest children are reported (du "
                                       "--max-depth=1); a missing one is skipped")
    top: int = Field(default=10, ge=1, le=1000, description="largest children reported per surveyed directory")
    rules: list[CleanupRule] = Field(default_factory=_seed_cleanup_rules, description="run in this order: "
                                     "lowest risk first")

    @field_validator("allowed_roots")
    @classmethod
    def _not_protected(cls, roots: list[Path]) -> list[Path]:
        """Issue 24: ``/etc`` was accepted, and a forced run deleted system files. ``force`` never reaches here."""
        for i, root in enumerate(roots):
            if why := protected_paths.system_refusal(root):
                raise refused_at((i,), f"allowed root {str(root)!r} {why}: cleanup never deletes there; "
                                 f"{ALLOWED_ROOT_FIX}")
        return roots

    @model_validator(mode="after")
    def _consistent(self) -> CleanupSettings:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(f"low_watermark ({self.low_watermark:g}) must be below high_watermark "
                             f"({self.high_watermark:g})")
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            twice = sorted(n for n in set(names) if names.count(n) > 1)
            raise ValueError(f"rule names must be unique: {', '.join(twice)}")
        checked: dict[Path, str | None] = {}  # rules often share a root (the seeds: /var/log three times)
        for index, rule in enumerate(self.rules):
            if not isinstance(rule, FileRule):
                continue
            for i, root in enumerate(rule.roots):
                if root not in checked:
                    checked[root] = protected_paths.system_refusal(root)
                if why := checked[root]:
                    raise refused_at(("rules", index, "roots", i), f"rule {rule.name!r}: root {str(root)!r} {why}: "
                                     f"cleanup never deletes there; {RULE_ROOT_FIX}")
                if not any(root == allowed or allowed in root.parents for allowed in self.allowed_roots):
                    raise ValueError(f"rule {rule.name!r}: root {str(root)!r} is outside allowed_roots "
                                     f"({', '.join(map(str, self.allowed_roots))})")
        return self

    def rule(self, name: str) -> CleanupRule | None:
        return next((rule for rule in self.rules if rule.name == name), None)
