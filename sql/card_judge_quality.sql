-- The dataset card's section "Judge quality on held-out annotations" (alma-data publish).
select round,
  metric,
  value,
  n
from judge_quality
order by all
