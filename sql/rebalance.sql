-- Diversity rebalancing: synthetic prompts skew to common queries, so pick K clusters
-- and one never-used prompt from each. Clusters and the prompt inside a cluster are
-- drawn in a seeded hash order, so the pick is random yet reproducible.
-- Views: clustered (prompt_id, prompt, cluster, shots) — unique candidates with their
--        k-means cluster; used_prompts (prompt_id) — prompts of all earlier rounds.
-- Parameters: $k (clusters to take), $seed.
WITH fresh AS (
    SELECT * FROM clustered
    WHERE prompt_id NOT IN (SELECT prompt_id FROM used_prompts)
),
one_per_cluster AS (
    SELECT *, row_number() OVER (PARTITION BY cluster ORDER BY hash(prompt_id, $seed), prompt_id) AS pick
    FROM fresh
),
ranked AS (
    SELECT *, row_number() OVER (ORDER BY hash(cluster, $seed), cluster) AS cluster_rank
    FROM one_per_cluster
    WHERE pick = 1
)
SELECT prompt_id, prompt, cluster, shots
FROM ranked
WHERE cluster_rank <= $k
ORDER BY cluster_rank
