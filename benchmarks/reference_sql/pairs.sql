-- Preference pairs for DPO, one per prompt, by the strategy $strategy:
--   best_vs_random (the paper's best): the top response against a random other one;
--   best_vs_worst: the top against the bottom;
--   random_pair: two random responses, the higher-scored one chosen.
-- "Random" is a seeded hash order. A pair whose scores are equal is skipped: it
-- teaches nothing. Views: responses, judgments, prompts. Parameters: $strategy, $seed.
WITH scored AS (
    SELECT r.prompt_id, r.response_id, r.response, j.score,
           row_number() OVER (PARTITION BY r.prompt_id ORDER BY j.score DESC, r.response_id) AS best_rank,
           row_number() OVER (PARTITION BY r.prompt_id ORDER BY j.score ASC, r.response_id DESC) AS worst_rank,
           row_number() OVER (PARTITION BY r.prompt_id ORDER BY hash(r.response_id, $seed), r.response_id) AS random_rank
    FROM responses r JOIN judgments j USING (response_id)
),
best AS (SELECT * FROM scored WHERE best_rank = 1),
other AS (
    -- the random response compared with the best is drawn among those scored below it
    SELECT s.*, row_number() OVER (PARTITION BY s.prompt_id ORDER BY s.random_rank) AS k
    FROM scored s JOIN best b USING (prompt_id)
    WHERE s.score < b.score
),
candidates AS (
    SELECT b.prompt_id, b.response_id AS a_id, b.response AS a, b.score AS a_score,
           o.response_id AS b_id, o.response AS b, o.score AS b_score
    FROM best b JOIN other o USING (prompt_id)
    WHERE $strategy = 'best_vs_random' AND o.k = 1
    UNION ALL
    SELECT b.prompt_id, b.response_id, b.response, b.score, w.response_id, w.response, w.score
    FROM best b JOIN scored w USING (prompt_id)
    WHERE $strategy = 'best_vs_worst' AND w.worst_rank = 1
    UNION ALL
    SELECT x.prompt_id, x.response_id, x.response, x.score, y.response_id, y.response, y.score
    FROM scored x JOIN scored y USING (prompt_id)
    WHERE $strategy = 'random_pair' AND x.random_rank = 1 AND y.random_rank = 2
)
SELECT
    c.prompt_id, p.prompt,
    CASE WHEN a_score >= b_score THEN a ELSE b END AS chosen,
    CASE WHEN a_score >= b_score THEN b ELSE a END AS rejected,
    greatest(a_score, b_score) AS chosen_score,
    least(a_score, b_score) AS rejected_score,
    CASE WHEN a_score >= b_score THEN a_id ELSE b_id END AS chosen_id,
    CASE WHEN a_score >= b_score THEN b_id ELSE a_id END AS rejected_id,
    $strategy AS strategy
FROM candidates c JOIN prompts p USING (prompt_id)
WHERE a_score <> b_score
ORDER BY c.prompt_id
