-- Preference pairs for DPO, one per prompt, by the strategy $strategy:
--   best_vs_random (the paper's best): the top response against a random other one;
--   best_vs_worst: the top against the bottom;
--   random_pair: two random responses, the higher-scored one chosen.
-- "Random" is a seeded hash order. A pair whose scores are equal is skipped: it
-- teaches nothing. Views: responses, judgments, prompts. Parameters: $strategy, $seed.
-- Pairs are chosen over ids and scores only, by aggregates (one row a prompt, no sort
-- and no window over the responses), and nothing of the responses x judgments join is
-- kept: each pass joins them again, which costs less than holding 10M rows. The two
-- texts of each pair are fetched after, in one scan.
WITH per_prompt AS MATERIALIZED (
    -- the top response is the least (-score, response_id); the bottom, the greatest
    -- (-score, response_id): the lowest score, ties to the highest response_id; the
    -- random pair, the first two in the seeded hash order (then response_id)
    SELECT r.prompt_id,
           arg_min({'id': r.response_id, 'score': j.score}, (-j.score, r.response_id)) AS best,
           arg_max({'id': r.response_id, 'score': j.score}, (-j.score, r.response_id))
               FILTER (WHERE $strategy = 'best_vs_worst') AS worst,
           arg_min({'id': r.response_id, 'score': j.score}, (hash(r.response_id, $seed), r.response_id), 2)
               FILTER (WHERE $strategy = 'random_pair') AS first_two
    FROM responses r JOIN judgments j USING (response_id) JOIN prompts p USING (prompt_id)
    GROUP BY r.prompt_id
),
other AS (
    -- best_vs_random: the random response compared with the best is drawn among those
    -- scored below it, the first of them in the seeded hash order (a second pass)
    SELECT r.prompt_id,
           arg_min({'id': r.response_id, 'score': j.score}, (hash(r.response_id, $seed), r.response_id)) AS o
    FROM responses r JOIN judgments j USING (response_id) JOIN per_prompt b ON b.prompt_id = r.prompt_id
    WHERE j.score < b.best.score AND $strategy = 'best_vs_random'
    GROUP BY r.prompt_id
),
candidates AS MATERIALIZED (
    SELECT prompt_id, a.id AS a_id, a.score AS a_score, b.id AS b_id, b.score AS b_score
    FROM (
        SELECT b.prompt_id, b.best AS a, o.o AS b FROM per_prompt b JOIN other o USING (prompt_id)
        UNION ALL
        SELECT prompt_id, best, worst FROM per_prompt WHERE $strategy = 'best_vs_worst'
        UNION ALL
        SELECT prompt_id, first_two[1], first_two[2] FROM per_prompt
        WHERE $strategy = 'random_pair' AND len(first_two) = 2
    )
    WHERE a.score <> b.score
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
