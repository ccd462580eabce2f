-- The dataset card's section "Judge scores per round" (alma-data publish).
select round,
  count(*) as responses,
  avg(score) as mean,
  max(score) as max,
  min(score) as min
from judgments
group by all
order by round
