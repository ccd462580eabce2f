-- The report's user_eval figure: alma-data eval: each set's prompts answered greedily by each
-- checkpoint, scored by one judge (table user_eval_summary; the answers are in user_eval).
select eval_set,
  checkpoint,
  value as mean_score,
  low,
  high,
  n,
  judge
from user_eval_summary
where metric = 'mean_score'
order by eval_set, checkpoint
