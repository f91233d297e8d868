-- The operators' figures of the agency inbox (lifeline_store::stats::task_counts, sampled for
-- /metrics every few seconds): tasks counted by status, agency and procedure, and the open or
-- claimed ones past their due time, read from this index alone instead of the table's rows
-- (which carry each task's whole application).
CREATE INDEX projection_tasks_counts ON projection_tasks (status, agency, procedure, due_at);
