//! Every bound of the shard, named (STYLE: "Put a bound on every channel, batch, frame and
//! in-flight count").
