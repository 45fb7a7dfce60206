fn main() -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet: transparent interception is tracked in its own issue")
}
