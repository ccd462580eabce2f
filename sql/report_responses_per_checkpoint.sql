-- The report's responses_per_checkpoint figure: Responses sampled in each round, by the
-- checkpoint that wrote them (the checkpoint mix).
select round,
  checkpoint,
  count(*) as responses
from responses
group by all
order by all
