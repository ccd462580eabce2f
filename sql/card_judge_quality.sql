-- The dataset card's section "Judge quality" (alma-data publish): the judge ladder on the
-- held-out annotations and on each judge.eval_sets set, with 95% intervals.
select round,
  coalesce(eval_set, 'heldout') as eval_set,
  rung,
  metric,
  value,
  low,
  high,
  n
from judge_quality
order by all
