"""Bulk catalogue embedding (`embed-file`): in-process, through servers, or on Ray.

`job` runs a job (shards, resume), `files` reads and writes the files, `ray_bulk` runs the same job on Ray
Data, `cli` holds the flags. `ray_bulk` imports `job`, never the other way round.
"""
