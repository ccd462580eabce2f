-- The report's cluster_coverage figure: k-means clusters over the unique candidates, and how
-- many of them gave a selected prompt.
select c.round,
  count(distinct c.cluster) as clusters,
  count(distinct p.cluster) as covered
from prompt_clusters c
left join prompts p on p.round = c.round and p.prompt_id = c.prompt_id
group by all
order by c.round
