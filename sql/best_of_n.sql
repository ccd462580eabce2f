-- Best-of-n: the top-scored response of every prompt becomes this round's SFT data.
-- Ties are broken by response_id, so the choice is deterministic.
-- Views: responses, judgments (this round), prompts (this round; one row a prompt_id).
-- The pick runs over ids and scores only; the texts of the K winners are fetched after
-- it, so 10M responses are never sorted with their texts.
WITH best AS MATERIALIZED (
    -- one pass of grouping, no sort: the least (-score, response_id) is the top score,
    -- ties to the lowest response_id (scores are never null)
    SELECT r.prompt_id, arg_min(r.response_id, (-j.score, r.response_id)) AS response_id,
           max(j.score) AS score, count(*) AS n
    FROM responses r
    JOIN judgments j USING (response_id)
    JOIN prompts p USING (prompt_id)
    GROUP BY r.prompt_id
),
texts AS (
    SELECT response_id, response FROM responses
    WHERE response_id IN (SELECT response_id FROM best)
)
SELECT b.prompt_id, p.prompt, t.response, b.score, 'best_of_n' AS source, b.response_id, b.n
FROM best b
JOIN texts t USING (response_id)
JOIN prompts p USING (prompt_id)
ORDER BY b.prompt_id
