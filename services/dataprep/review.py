"""Reading the stored review sample back for export."""

from __future__ import annotations

import json

from services.dataprep.examples import Example, example_from_record
from services.shared.artifacts import ArtifactStore


def read_review_sample(artifacts: ArtifactStore, sha256: str | None, size: int | None) -> list[Example]:
    if not sha256:
        return []
    examples = []
    with artifacts.open(sha256) as handle:
        for raw in handle:
            if size is not None and len(examples) >= size:
                break
            item = json.loads(raw)
            examples.append(example_from_record(item["record"], item["line"]))
    return examples
