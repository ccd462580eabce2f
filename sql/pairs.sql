-- Preference pairs for DPO, one per prompt, by the strategy $strategy:
--   best_vs_random (the paper's best): the top response against a random other one;
--   best_vs_worst: the top against the bottom;
--   random_pair: two random responses, the higher-scored one chosen.
-- "Random" is a seeded hash order. A pair whose scores are equal is skipped: it
-- teaches nothing. Views: responses, judgments, prompts. Parameters: $strategy, $seed.
-- Pairs are chosen over ids and scores only, by grouping where one row a prompt is
-- wanted; the two texts of each pair are fetched after, so 10M responses are never
-- sorted with their texts.
WITH scored AS MATERIALIZED (
    SELECT r.prompt_id, r.response_id, j.score
    FROM responses r JOIN judgments j USING (response_id)
),
best AS MATERIALIZED (
    -- the top response: the least (-score, response_id), by grouping, not sorting
    SELECT prompt_id, arg_min(response_id, (-score, response_id)) AS response_id, max(score) AS score
    FROM scored
    WHERE $strategy IN ('best_vs_random', 'best_vs_worst')
    GROUP BY prompt_id
),
other AS (
    -- the random response compared with the best is drawn among those scored below it:
    -- the first of them in the seeded hash order (then response_id)
    SELECT s.prompt_id, arg_min({'id': s.response_id, 'score': s.score}, (hash(s.response_id, $seed), s.response_id)) AS o
    FROM scored s JOIN best b USING (prompt_id)
    WHERE s.score < b.score AND $strategy = 'best_vs_random'
    GROUP BY s.prompt_id
),
worst AS (
    SELECT * FROM (
        SELECT *, row_number() OVER (PARTITION BY prompt_id ORDER BY score ASC, response_id DESC) AS worst_rank
        FROM scored WHERE $strategy = 'best_vs_worst'
    )
    WHERE worst_rank = 1
),
shuffled AS (
    SELECT * FROM (
        SELECT *, row_number() OVER (PARTITION BY prompt_id ORDER BY hash(response_id, $seed), response_id) AS random_rank
        FROM scored WHERE $strategy = 'random_pair'
    )
    WHERE random_rank <= 2
),
candidates AS MATERIALIZED (
    SELECT b.prompt_id, b.response_id AS a_id, b.score AS a_score, o.o.id AS b_id, o.o.score AS b_score
    FROM best b JOIN other o USING (prompt_id)
    UNION ALL
    SELECT b.prompt_id, b.response_id, b.score, w.response_id, w.score
    FROM best b JOIN worst w USING (prompt_id)
    UNION ALL
    SELECT x.prompt_id, x.response_id, x.score, y.response_id, y.score
    FROM shuffled x JOIN shuffled y USING (prompt_id)
    WHERE x.random_rank = 1 AND y.random_rank = 2
),
texts AS MATERIALIZED (
    SELECT response_id, response FROM responses
    WHERE response_id IN (SELECT a_id FROM candidates UNION ALL SELECT b_id FROM candidates)
)
SELECT
    c.prompt_id, p.prompt,
    CASE WHEN a_score >= b_score THEN ta.response ELSE tb.response END AS chosen,
    CASE WHEN a_score >= b_score THEN tb.response ELSE ta.response END AS rejected,
    greatest(a_score, b_score) AS chosen_score,
    least(a_score, b_score) AS rejected_score,
    CASE WHEN a_score >= b_score THEN a_id ELSE b_id END AS chosen_id,
    CASE WHEN a_score >= b_score THEN b_id ELSE a_id END AS rejected_id,
    $strategy AS strategy
FROM candidates c
JOIN prompts p USING (prompt_id)
JOIN texts ta ON ta.response_id = c.a_id
JOIN texts tb ON tb.response_id = c.b_id
WHERE a_score <> b_score
ORDER BY c.prompt_id
