-- The report's heldout_progress figure: Held-out seed prompts answered greedily by each
-- round's model, scored by the round-1 judge (Figure 2).
select round,
  avg(score) as mean_score,
  count(*) as prompts
from eval
group by all
order by round
