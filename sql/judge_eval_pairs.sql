-- The pairs judge quality is measured on (view judge_eval_rows: annotation_id, prompt_id,
-- human_score, score, score_int): two responses to the same prompt whose human scores
-- differ, with whether the judge's real-valued and integer scores order them the same
-- way (a tie in the judge's scores counts as wrong). sql/judge_quality.sql reads this view.
CREATE OR REPLACE TEMP VIEW judge_eval_pairs AS
SELECT
    a.prompt_id,
    sign(a.human_score - b.human_score) AS human,
    sign(a.score - b.score)             AS real_valued,
    sign(a.score_int - b.score_int)     AS integer
FROM judge_eval_rows a
JOIN judge_eval_rows b
  ON a.prompt_id = b.prompt_id AND a.annotation_id < b.annotation_id
WHERE a.human_score <> b.human_score
