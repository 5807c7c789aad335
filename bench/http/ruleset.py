"""The HTTP benchmarks' risk ruleset: the shape of `puhui bench risk` (10 velocity features, 100 CEL
rules), with thresholds that approve, so that the ledger posts every transfer and runs with and
without risk control do the same ledger work. Usage: python3 bench/http/ruleset.py OUT.toml"""
import sys
features = [("c1m","payer","count","1m"),("c1h","payer","count","1h"),("c24h","payer","count","24h"),
            ("s1h","payer","sum","1h"),("s24h","payer","sum","24h"),("m24h","payer","max","24h"),
            ("d24h","payer","distinct","24h"),("z30d","payer","zscore","30d"),
            ("dev24h","device","distinct","24h"),("ip1h","ip","count","1h")]
out = ['version = "bench-http-100"', "[thresholds]", "review = 1000000", "decline = 2000000"]
for n, e, a, w in features:
    out += ["[[features]]", f'name = "{n}"', f'entity = "{e}"', f'aggregate = "{a}"', f'window = "{w}"']
for i in range(100):
    n = features[i % len(features)][0]
    expr = [f"{n} >= {5 + i} && amount > {1000 * i}", f"new_payee && {n} > {i} && ctx.channel == 'app'",
            f"amount > {10000000 + i} || {n} > {1000 + i}", f"in_list('deny', ctx.device_id) && {n} >= {i}"][i % 4]
    out += ["[[rules]]", f'id = "r{i}"', 'description = "benchmark"', f'expression = "{expr}"', f"score = {10 + i % 7}"]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
