from invoice_batch.cli import main

main()
