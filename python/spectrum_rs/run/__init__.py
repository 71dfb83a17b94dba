"""Running a scan: the pipeline that drives the layer stream through the workers
(:mod:`.pipeline`), the resume checkpoint (:mod:`.checkpoint`), progress reporting
(:mod:`.progress`) and scans spread over ``torch.distributed`` ranks (:mod:`.distributed`)."""
