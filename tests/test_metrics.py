"""metrics.jsonl: whole rows only, a torn last line (a kill mid-write) tolerated and dropped."""

import json

from albert_jax import metrics


def test_a_torn_last_line_is_dropped_not_fatal(tmp_path):
  rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}]
  text = "".join(json.dumps(r) + "\n" for r in rows)
  (tmp_path / metrics.METRICS_FILE).write_text(text + '{"step": 3, "lo')  # killed mid-write
  assert metrics.read_metrics(tmp_path) == rows  # a reader sees whole rows only
  writer = metrics.MetricsWriter(tmp_path, resume_step=2)  # the restart: json.loads failed here
  writer.write(3, {"loss": 2.0})
  writer.close()
  assert metrics.read_metrics(tmp_path) == rows + [{"step": 3, "loss": 2.0}]
  assert (tmp_path / metrics.METRICS_FILE).read_text().endswith('"loss": 2.0}\n')


def test_rows_past_the_restored_step_are_dropped(tmp_path):
  writer = metrics.MetricsWriter(tmp_path, resume_step=0)
  for step in (1, 2, 3, 4):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  metrics.MetricsWriter(tmp_path, resume_step=2).close()
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2]
