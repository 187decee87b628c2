module relayapi/bench/loadgen

go 1.21
