"""The run report every runbook leaves: a Prefect markdown artifact a human reads after an incident."""

from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact

from runbooks.core.redact import scrub
from runbooks.tasks.policies import step_task


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100]


@step_task("publish-report")
def publish_report(*, key: str, markdown: str, description: str) -> str:
    """Publish the run report; secrets are scrubbed once more on the way out.

    Returns:
        The artifact id.
    """
    artifact_id = create_markdown_artifact(
        key=artifact_key(key), markdown=scrub(markdown), description=description
    )
    return str(artifact_id)
