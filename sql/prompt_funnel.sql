-- Prompts per round and where the others went: parse rejects (by status), exact
-- duplicates, prompts used in an earlier round, and those the rebalancing left out.
-- Views: prompt_candidates, prompt_clusters, prompts (all rounds).
SELECT c.round,
       count(*) AS candidates,
       count(*) FILTER (WHERE c.status <> 'ok') AS rejected_by_parsing,
       count(*) FILTER (WHERE c.status = 'ok') - count(DISTINCT k.prompt_id) AS rejected_by_dedup,
       count(DISTINCT k.prompt_id) - count(DISTINCT p.prompt_id) AS rejected_by_rebalancing,
       count(DISTINCT p.prompt_id) AS selected
FROM prompt_candidates c
LEFT JOIN prompt_clusters k ON k.round = c.round AND k.prompt_id = c.prompt_id AND c.status = 'ok'
LEFT JOIN prompts p ON p.round = c.round AND p.prompt_id = k.prompt_id
GROUP BY c.round
ORDER BY c.round
