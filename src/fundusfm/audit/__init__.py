"""Audits of a study's files against what the study recorded about them
(``fundusfm check-results``, :mod:`fundusfm.audit.results`)."""
