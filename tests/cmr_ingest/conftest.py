"""Shared cohorts for the cmr_ingest tests (small, built once per session)."""

from __future__ import annotations

import pytest

from cmr_ingest.ingest import ingest
from cmr_ingest.synth import generate_cohort

#: Salt used by every ingest in these tests.
SALT = "test-salt-0123456789"
#: Size and seed of the shared DICOM cohort (scan 3 has an axial localiser too).
N_SCANS = 6
SEED = 3


@pytest.fixture(scope="session")
def dicom_cohort(tmp_path_factory):
    """A synthetic DICOM cohort (folder holding synth_truth.csv)."""
    return generate_cohort(
        N_SCANS, tmp_path_factory.mktemp("dicom"), seed=SEED, dicom=True, workers=2
    )


@pytest.fixture(scope="session")
def png_cohort(tmp_path_factory):
    """The same cohort written directly as a PNG media root (path of manifest.csv)."""
    return generate_cohort(N_SCANS, tmp_path_factory.mktemp("png"), seed=SEED, workers=2)


@pytest.fixture(scope="session")
def ingested(dicom_cohort, tmp_path_factory):
    """(media root, report) of ingesting the DICOM cohort."""
    out = tmp_path_factory.mktemp("ingested")
    report = ingest(dicom_cohort, out, salt=SALT)
    return out, report
