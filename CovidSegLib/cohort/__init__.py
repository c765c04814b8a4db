"""Cohorts: a folder of CTs segmented by one process or many, on one machine or a cluster, resumably.

The room above the engine and measurement, because a cohort run does both for every case: it segments with
:mod:`CovidSegLib.engine.pipeline`, measures with :mod:`CovidSegLib.measure`, and keeps the records that let any
number of processes share one output folder without a coordinating service:

- :mod:`.fingerprint`: what an input is (file names, sizes, content hashes);
- :mod:`.manifest`: what made an output, written after it; an output counts as done only if it verifies;
- :mod:`.claims`: which process works on which case now (an ``O_EXCL`` file, taken over when stale);
- :mod:`.parts`: a deterministic share of the cases for ``--part I/N`` (a SLURM job array);
- :mod:`.summary`: the run's CSV, one row per case, and the merge of the parts' summaries;
- :mod:`.extras`: what a case has beside its label file (report, DICOM SR), and how a rerun completes it;
- :mod:`.hold`: a pause mid-case that tests use to kill or stop a process there without timing it;
- :mod:`.run`: the loop that ties them together.

Its state lives in ``OUT/.covidseg/`` (hidden, so tools that pair files by name never see it)."""
