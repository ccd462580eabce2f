-- The dataset card's section "Held-out score of each round's model" (alma-data publish).
select round,
  any_value(model) as model,
  avg(score) as mean_score,
  count(*) as prompts
from eval
group by all
order by round
