"""The slice data layer: DICOM → anonymised PNG slices + manifest, and the synthetic phantom.

Modules (import what you need; nothing heavy is imported here):

* :mod:`cmr_ingest.synth` — ``generate_cohort(n_scans, out_dir, *, seed=0, dicom=False)``
* :mod:`cmr_ingest.ingest` — ``ingest(src, out_dir, *, salt, ...)`` → :class:`IngestReport`
* :mod:`cmr_ingest.manifest` — ``read_manifest`` / ``write_manifest``
* :mod:`cmr_ingest.phantom` — the short-axis LGE phantom (pure NumPy)
* :mod:`cmr_ingest.dicom_io`, :mod:`cmr_ingest.pixels`, :mod:`cmr_ingest.geometry`,
  :mod:`cmr_ingest.ids`, :mod:`cmr_ingest.errors`, :mod:`cmr_ingest.settings`
"""
