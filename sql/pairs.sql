-- Preference pairs for DPO, one per prompt, by the strategy $strategy:
--   best_vs_random (the paper's best): the top response against a random other one;
--   best_vs_worst: the top against the bottom;
--   random_pair: two random responses, the higher-scored one chosen.
-- "Random" is a seeded hash order. A pair whose scores are equal is skipped: it
-- teaches nothing. Views: responses, judgments, prompts. Parameters: $strategy, $seed.
-- Pairs are chosen over ids and scores only, by aggregates in one pass over
-- responses x judgments (one row a prompt: no sort, no window, nothing of the 10M rows
-- kept); the two texts of each pair are fetched after, in one scan.
WITH per_prompt AS MATERIALIZED (
    -- the top response is the least (-score, response_id); the bottom, the greatest
    -- (-score, response_id): the lowest score, ties to the highest response_id;
    -- first_four: the first four in the seeded hash order (then response_id)
    SELECT r.prompt_id,
           arg_min({'id': r.response_id, 'score': j.score}, (-j.score, r.response_id)) AS best,
           arg_max({'id': r.response_id, 'score': j.score}, (-j.score, r.response_id))
               FILTER (WHERE $strategy = 'best_vs_worst') AS worst,
           arg_min({'id': r.response_id, 'score': j.score}, (hash(r.response_id, $seed), r.response_id), 4)
               FILTER (WHERE $strategy IN ('best_vs_random', 'random_pair')) AS first_four,
           count(*) AS n
    FROM responses r JOIN judgments j USING (response_id) JOIN prompts p USING (prompt_id)
    GROUP BY r.prompt_id
),
other AS (
    -- best_vs_random: the random response compared with the best is the first in hash
    -- order among those scored below it. Unless four or more tie at the top, it is among
    -- the first four; for a prompt whose first four all tie at the top (and that has more),
    -- a second pass over that prompt's responses finds it.
    SELECT prompt_id, list_filter(first_four, lambda x: x.score < best.score)[1] AS o
    FROM per_prompt
    WHERE $strategy = 'best_vs_random'
),
rare AS MATERIALIZED (
    SELECT prompt_id, best.score AS top FROM per_prompt b JOIN other o USING (prompt_id)
    WHERE o.o IS NULL AND b.n > 4
),
other_rare AS (
    SELECT r.prompt_id,
           arg_min({'id': r.response_id, 'score': j.score}, (hash(r.response_id, $seed), r.response_id)) AS o
    FROM rare t JOIN responses r USING (prompt_id) JOIN judgments j USING (response_id)
    WHERE j.score < t.top
    GROUP BY r.prompt_id
),
candidates AS MATERIALIZED (
    SELECT prompt_id, a.id AS a_id, a.score AS a_score, b.id AS b_id, b.score AS b_score
    FROM (
        SELECT b.prompt_id, b.best AS a, coalesce(o.o, x.o) AS b
        FROM per_prompt b JOIN other o USING (prompt_id) LEFT JOIN other_rare x USING (prompt_id)
        UNION ALL
        SELECT prompt_id, best, worst FROM per_prompt WHERE $strategy = 'best_vs_worst'
        UNION ALL
        SELECT prompt_id, first_four[1], first_four[2] FROM per_prompt
        WHERE $strategy = 'random_pair' AND len(first_four) >= 2
    )
    WHERE b IS NOT NULL AND a.score <> b.score
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
ORDER BY c.prompt_id
