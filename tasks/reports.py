"""The run report every runbook leaves: a Prefect markdown artifact a human reads after an incident."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from runbooks.core.redact import scrub


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(*, key: str, markdown: str, description: str) -> str:
    """Publish the run report; secrets are scrubbed once more on the way out.

    Returns:
        The artifact id.
    """
    artifact_id = create_markdown_artifact(
        key=artifact_key(key), markdown=scrub(markdown), description=description
    )
    return str(artifact_id)
