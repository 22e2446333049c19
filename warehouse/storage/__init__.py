"""Storage: one small port (`base`), two adapters (`local`, `s3`), the wrappers that change
what some operations do (`wrappers`), and opening the store a URL names (`url`)."""
