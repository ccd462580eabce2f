-- The report's judge_quality figure: Pairwise accuracy on held-out annotations (ties count as
-- wrong); round 2's judge is the self-distilled one.
select round,
  max(value) filter (where metric = 'pairwise_accuracy_int') as integer,
  max(value) filter (where metric = 'pairwise_accuracy_real') as real_valued,
  max(value) filter (where metric = 'spearman_real') as spearman_real
from judge_quality
group by all
order by round
