-- The best-of-n curve (the paper's Figure 3 on our data): the expected best judge
-- score when n of a prompt's N responses are drawn without replacement, averaged over
-- prompts, for n = 1, 2, 4, ..., N. With the scores of a prompt sorted ascending
-- (rank i = 1..N), the i-th is the best of the draw with probability
-- C(i-1, n-1) / C(N, n).
-- Views: responses, judgments (all rounds: the views of `alma-data query`).
WITH scored AS (
    SELECT r.round, r.prompt_id, j.score,
           row_number() OVER (PARTITION BY r.round, r.prompt_id ORDER BY j.score, r.response_id) AS i,
           count(*) OVER (PARTITION BY r.round, r.prompt_id) AS big_n
    FROM responses r JOIN judgments j USING (response_id)
),
sizes AS (SELECT DISTINCT round, big_n FROM scored),
ns AS (
    SELECT DISTINCT round, big_n, n FROM (
        SELECT round, big_n, CAST(pow(2, e) AS BIGINT) AS n
        FROM sizes, range(0, 40) AS t(e)
        WHERE pow(2, e) <= big_n
        UNION ALL
        SELECT round, big_n, big_n FROM sizes
    )
),
weighted AS (
    SELECT s.round, s.prompt_id, ns.n,
           sum(CASE WHEN s.i >= ns.n THEN s.score * exp(
               lgamma(s.i) - lgamma(ns.n) - lgamma(s.i - ns.n + 1)
               - (lgamma(s.big_n + 1) - lgamma(ns.n + 1) - lgamma(s.big_n - ns.n + 1))) ELSE 0 END) AS expected_best
    FROM scored s JOIN ns ON s.round = ns.round AND s.big_n = ns.big_n
    GROUP BY ALL
)
SELECT round, n, avg(expected_best) AS expected_best_score, count(*) AS prompts,
       list(expected_best ORDER BY prompt_id) AS per_prompt  -- for an interval over prompts
FROM weighted
GROUP BY ALL
ORDER BY round, n
