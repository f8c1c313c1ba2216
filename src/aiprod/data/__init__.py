"""The data pipeline: raw videos -> validated, normalized, curriculum-organized clips.

Modules: ``ingest`` (folders, lists, URLs), ``validate`` (probe + checks), ``split`` (scenes),
``normalize`` (24 fps H.264), ``organize`` (phases 1-5), ``report`` (summary + contact sheets),
``manifest`` (the row type and its files),
``dataset`` (``CurriculumVideoDataset``, torch), ``config`` (``configs/data.yaml``).
Nothing here imports torch except ``dataset``. See docs/data.md.
"""
