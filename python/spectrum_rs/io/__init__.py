"""Files other tools read: the reference tool's result files (:mod:`.reference_files`)."""
