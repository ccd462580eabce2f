-- The picks of selection: the rows sql/best_of_n.sql, pairs.sql and judge_distill.sql
-- turn into this round's sft, dpo and judge_distill tables. Run it once into a table
-- named picks (CREATE TEMP TABLE picks AS ...), then the three files.
-- Views: responses, judgments, prompts (this round; response_id is the key of responses).
-- Parameters: $strategy (pairs: best_vs_random, best_vs_worst or random_pair), $seed (the
-- seeded hash order of pairs and sample), $n (responses in the distillation sample).
-- Result: one row a pick, with the response's score and text: pick = 'best' (its
-- prompt's top response; n = the prompt's judged responses), 'chosen' and 'rejected'
-- (its prompt's pair), 'distill' (in the sample; ord orders it).
--
-- Why one file: every pick is made in one pass of aggregates over responses x judgments,
-- one row a prompt (no sort and no window over the 10M rows, none of them kept), and the
-- texts of all picks are fetched in one scan of the responses: the join and the scan of
-- the texts are most of the work, and the three tables share them.
--   best:   the least (-score, response_id): the top score, ties to the lowest response_id;
--   worst:  the greatest (-score, response_id): the lowest score, ties to the highest id;
--   first8: the prompt's first eight responses in the seeded hash order (then response_id).
-- best_vs_random's partner (the first in hash order scored below the best) and the sample
-- (the first $n judged responses in hash order over all prompts) are in first8, except in
-- "rare" prompts: those with more than eight responses where the first eight all tie at
-- the top, or whose eighth is not past the cutoff (the $n-th of all first8 rows, which no
-- row of the sample lies past). Their rows get a second pass, which costs one scan of ids.
WITH per_prompt AS MATERIALIZED (
    SELECT r.prompt_id,
           arg_min({'id': r.response_id, 'score': j.score}, (-j.score, r.response_id)) AS best,
           arg_max({'id': r.response_id, 'score': j.score}, (-j.score, r.response_id))
               FILTER (WHERE $strategy = 'best_vs_worst') AS worst,
           min({'h': hash(r.response_id, $seed), 'id': r.response_id, 'score': j.score}, 8) AS first8,
           count(*) AS n
    FROM responses r JOIN judgments j USING (response_id) JOIN prompts p USING (prompt_id)
    GROUP BY r.prompt_id
),
candidates AS MATERIALIZED (
    SELECT prompt_id, x.h, x.id AS response_id, x.score
    FROM (SELECT prompt_id, unnest(first8) AS x FROM per_prompt)
),
cutoff AS MATERIALIZED (
    -- the $n-th candidate in hash order: the candidates are some of the judged responses,
    -- so at least $n judged responses lie at or before it
    SELECT {'h': h, 'id': response_id} AS last FROM candidates ORDER BY h, response_id LIMIT 1 OFFSET greatest($n, 1) - 1
),
rare AS MATERIALIZED (
    SELECT prompt_id, best.score AS top FROM per_prompt
    WHERE n > 8 AND (
        ($strategy = 'best_vs_random' AND len(list_filter(first8, lambda x: x.score < best.score)) = 0)
        OR NOT EXISTS (SELECT 1 FROM cutoff)
        OR {'h': first8[8].h, 'id': first8[8].id} <= (SELECT last FROM cutoff))
),
rare_rows AS MATERIALIZED (
    SELECT r.prompt_id, hash(r.response_id, $seed) AS h, r.response_id, j.score
    FROM rare t JOIN responses r USING (prompt_id) JOIN judgments j USING (response_id)
),
pairs AS (
    -- a pair whose scores are equal is skipped: it teaches nothing
    SELECT prompt_id, a, b FROM (
        SELECT b.prompt_id, b.best AS a,
               coalesce(list_filter(b.first8, lambda x: x.score < b.best.score)[1],
                        (SELECT arg_min(x, (x.h, x.id)) FROM (SELECT {'h': h, 'id': response_id, 'score': score} AS x
                                                              FROM rare_rows q WHERE q.prompt_id = b.prompt_id
                                                                AND q.score < b.best.score))) AS b
        FROM per_prompt b WHERE $strategy = 'best_vs_random'
        UNION ALL
        SELECT prompt_id, best, worst FROM per_prompt WHERE $strategy = 'best_vs_worst'
        UNION ALL
        SELECT prompt_id, first8[1], first8[2] FROM per_prompt WHERE $strategy = 'random_pair' AND n >= 2
    )
    WHERE b IS NOT NULL AND a.score <> b.score
),
sample AS MATERIALIZED (
    SELECT prompt_id, h, response_id, score FROM (
        SELECT * FROM candidates WHERE prompt_id NOT IN (SELECT prompt_id FROM rare)
        UNION ALL
        SELECT * FROM rare_rows
    )
    ORDER BY h, response_id
    LIMIT $n
),
picks AS MATERIALIZED (
    SELECT prompt_id, best.id AS response_id, best.score AS score, 'best' AS pick, n, NULL::UBIGINT AS ord
    FROM per_prompt
    UNION ALL
    SELECT prompt_id, CASE WHEN a.score > b.score THEN a.id ELSE b.id END, greatest(a.score, b.score), 'chosen', NULL, NULL
    FROM pairs
    UNION ALL
    SELECT prompt_id, CASE WHEN a.score > b.score THEN b.id ELSE a.id END, least(a.score, b.score), 'rejected', NULL, NULL
    FROM pairs
    UNION ALL
    SELECT prompt_id, response_id, score, 'distill', NULL, h FROM sample
)
SELECT k.prompt_id, k.response_id, k.score, k.pick, k.n, k.ord, t.response
FROM picks k
JOIN (SELECT response_id, response FROM responses WHERE response_id IN (SELECT response_id FROM picks)) t
  USING (response_id)
