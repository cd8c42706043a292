"""The sweep: plan (axes, grid), run (repeats, fresh servers), records, report (tables, answer), plots,
and infer-compare. It stands on client/ and server/; neither imports it."""
