-- The report's prompt_sets figure: every round's model on the eval.prompt_sets sets, scored by
-- the round-1 judge (table prompt_set_summary): the base model as round 0, m1a as round 1,
-- then M_r; mean score with its 95% interval over prompts.
select eval_set,
  case checkpoint when 'base' then 0 when 'm1a' then 1 else round end as model_round,
  checkpoint,
  value as mean_score,
  low,
  high,
  n as prompts
from prompt_set_summary
where metric = 'mean_score'
  and (checkpoint not in ('base', 'm1a') or round = 1)
order by eval_set, model_round
