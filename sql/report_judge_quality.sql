-- The report's judge_quality figure: the paper's judge ladder on every set the run is measured
-- on (heldout: the held-out seed annotations; then each judge.eval_sets set). Rungs: the base
-- model as the few-shot judge, the fine-tuned judge with integer and with real-valued scores,
-- the self-distilled judge (round 2). Pairwise accuracy, ties counted wrong, 95% interval.
select coalesce(eval_set, 'heldout') as eval_set,
  case when metric = 'pairwise_accuracy_int' then coalesce(rung, 'fine-tuned') || ', integer' else coalesce(rung, 'fine-tuned') || ', real-valued' end as rung,
  round,
  value as accuracy,
  low,
  high,
  n as pairs
from judge_quality
where metric in ('pairwise_accuracy_real', 'pairwise_accuracy_int')
  and (metric = 'pairwise_accuracy_real' or coalesce(rung, 'fine-tuned') = 'fine-tuned')
order by coalesce(eval_set, 'heldout') <> 'heldout', eval_set, round,
  case when rung = 'base few-shot' then 0 when metric = 'pairwise_accuracy_int' then 1 else 2 end
